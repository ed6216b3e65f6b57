"""`python -m raytev` is the `raytev` command."""

from raytev.cli import main

raise SystemExit(main())
