"""The WhatsApp channel, through Twilio's Messaging API and webhooks."""
