"""Stockade's trusted core: envelope, settings, sanitizer, bus, router, commands, policy.

Importing this package is cheap and has no side effects; heavy dependencies are
imported by the modules that need them, when they are first used.
"""
