"""Getting the newest images to the nodes: resolve the newest matching image of each repository by digest
(``resolution``), build the one Run Command request (``commands``) and send it exactly once (``sending``,
``idempotency``), for a push (``push``) and for a new node (``launch``)."""
