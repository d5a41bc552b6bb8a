"""The agent runtime that runs inside each sandboxed container (trust zone 3).

It is copied into the agent image and may import the standard library only;
a test enforces this. It talks to the world through one unix socket, the mesh
(`_client`), runs a bounded tool loop (`_loop`) with a shell and file tools
confined to its workspace (`_tools`), and keeps its conversation memory in that
workspace (`_memory`). Start it with `python3 -m agents`.
"""
