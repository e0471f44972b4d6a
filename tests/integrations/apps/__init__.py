"""Apps the real-server tests start (``*_server.py``) and doubles for the WSGI tests."""
