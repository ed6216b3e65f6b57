"""`raytev doctor`: what this machine and this install will use, and the known bad combinations of them.

facts.py gathers one section at a time (without starting Ray, and with jax in a child process that cannot hang the
command), rules.py turns facts into warnings, report.py is the stage: the result a program reads and the text or
JSON a bug report quotes. (Not `raytev/doctor.py`: importing a submodule raytev.doctor would replace the
`raytev.doctor()` function on the package.)
"""
