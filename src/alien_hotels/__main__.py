from alien_hotels.cli import app

app()
