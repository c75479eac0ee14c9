"""The synthetic-data tests talk to tests/serve/fault_server.py's fake OpenAI-compatible server."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serve"))
