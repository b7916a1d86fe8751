"""Graphviz DOT text of a graph snapshot: one box per node, one arrow per edge.

Arrows point from client to server and are labelled ``port/protocol`` with the flow count;
inferred edges (direction guessed, handshake never seen) are dashed; local nodes are filled.
"""

from __future__ import annotations

from netweave.graph.model import Edge, GraphView, Node

__all__ = ["to_dot"]


def to_dot(view: GraphView, *, name: str = "netweave") -> str:
    """The graph as a DOT ``digraph`` that ``dot -Tsvg`` renders."""
    lines = [
        f"digraph {_quote(name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    lines.extend(f"  {_quote(n.ip)} [{_node_attrs(n)}];" for n in view.nodes)
    lines.extend(
        f"  {_quote(e.client)} -> {_quote(e.server)} [{_edge_attrs(e)}];" for e in view.edges
    )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node_attrs(n: Node) -> str:
    label = [n.ip]
    if n.host:
        label.append(n.host)
    if n.processes:
        label.append(", ".join(n.processes))
    label.extend(f"{a.key}: {a.value}" for a in n.annotations[:4])
    attrs = [f"label={_quote(chr(10).join(label))}"]
    if n.local:
        attrs.append('style=filled, fillcolor="#dde8f7"')
    return ", ".join(attrs)


def _edge_attrs(e: Edge) -> str:
    label = f"{e.port}/{e.protocol}\n{e.flows} flow{'s' if e.flows != 1 else ''}"
    if e.server_process:
        label += f"\n{e.server_process}"
    attrs = [f"label={_quote(label)}"]
    if e.inferred:
        attrs.append("style=dashed")
    return ", ".join(attrs)
