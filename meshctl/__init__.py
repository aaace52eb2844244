"""meshctl: the idmesh command-line tool."""
