"""`python -m app.cli ...`: the same as the `sne` console script."""
from app.cli import app

app(prog_name="sne")
