"""The synthetic kitchen (``leap demo-data``): see ``kitchen.py``."""
