"""The agent runtime that runs inside each sandboxed container (trust zone 3).

It is copied into the agent image and may import the standard library only;
a test enforces this. It talks to the world through one unix socket, the mesh.
"""
