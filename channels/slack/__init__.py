"""The Slack channel: Events API (Socket Mode or signed HTTP) in, chat.postMessage out."""
