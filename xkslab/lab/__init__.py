"""The lab: the three services started together (``up``), bootstrapped on first start, and the demo that
walks the double envelope against them. Imports the services' entry points, never the command line."""
