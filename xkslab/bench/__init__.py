"""The benchmark (``xkslab bench``, ``scripts/bench``): xkslab under wrk beside anchors measured in the
same run. Top floor, beside the lab: it starts labs as processes and imports no service."""
