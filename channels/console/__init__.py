"""The console channel: `stockade chat` drives the full pipeline from a terminal."""
