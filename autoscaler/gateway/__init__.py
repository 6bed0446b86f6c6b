"""The nginx gateway: pure rendering (render.py) and the process/reload shell (nginx.py)."""
