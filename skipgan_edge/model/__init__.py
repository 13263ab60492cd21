"""Networks and the exported scorer graph."""
