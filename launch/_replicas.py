"""Replica expansion: a node with ``replicas: N`` becomes N nodes sharing its inputs."""

from __future__ import annotations

from ._schema import Graph, NodeSpec, TopicSpec


def expand_replicas(graph: Graph) -> None:
    """Turn each node with ``replicas: N`` into N nodes ``name.0`` .. ``name.N-1``.

    Their shared subscriptions join one group named after the node, so each input message
    goes to one replica; each replica publishes to its own copy of every output topic
    (``topic/0`` ...), and every subscriber of such a topic reads all copies merged in input
    order (the ``source_seq`` each output carries). With ``cpus``, replica i is pinned to the
    i-th CPU of the list (round robin), so replicas do not queue behind each other on one core."""
    replicated: dict[str, list[str]] = {}
    for name, spec in list(graph.nodes.items()):
        if spec.replicas <= 1:
            continue
        del graph.nodes[name]
        ports = spec.replica_ports if spec.replica_ports is not None else list(spec.subscribe)
        for topic in spec.publish.values():
            base = graph.topics.pop(topic, None)
            replicated[topic] = [f"{topic}/{i}" for i in range(spec.replicas)]
            if base is not None:
                for t in replicated[topic]:
                    graph.topics[t] = TopicSpec(t, base.capacity, base.pool, base.dtype, base.shape, base.where)
        for i in range(spec.replicas):
            copy = NodeSpec(**{**vars(spec), "name": f"{name}.{i}", "replicas": 1})
            if spec.cpus:
                copy.cpus = (spec.cpus[i % len(spec.cpus)],)
            copy.publish = {port: f"{topic}/{i}" for port, topic in spec.publish.items()}
            copy.groups = {port: name for port in ports}
            graph.nodes[copy.name] = copy
    for spec in graph.nodes.values():
        for port, topic in spec.subscribe.items():
            if topic in replicated:
                spec.merge[port] = replicated[topic]
