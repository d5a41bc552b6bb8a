"""The names of the roles that can run apart (`stockade run ROLE`)."""

from typing import Final

ROLES: Final = ("router",)
