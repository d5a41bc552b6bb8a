"""The Discord channel: discord.py gateway in, REST out."""
