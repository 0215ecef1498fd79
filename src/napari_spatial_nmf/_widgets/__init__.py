"""Dock widgets: thin Qt front-ends that collect parameters, run the core in a worker
thread and turn results into new layers.
"""
