"""What happened on the nodes: each command invocation read and counted once (``invocations``, ``claims``), what
its report does to the node's rows (``reports``, ``table``), the metrics it prints (``metrics``), coverage per
repository (``coverage``), and the scheduled sweep (``sweep``) that counts what no event reported and repairs the
nodes left behind (``repair``)."""
