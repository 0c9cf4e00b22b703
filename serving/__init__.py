"""The BentoML service (`serving.service:ConvLens`), its settings and the web page it mounts."""
