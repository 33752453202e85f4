from omnistream.cli import app

app(prog_name="omnistream")
