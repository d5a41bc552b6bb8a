"""The Telegram channel: Bot API long polling or webhook, through python-telegram-bot."""
