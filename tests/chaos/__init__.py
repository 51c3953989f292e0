"""The chaos harness: `python -m tests.chaos --profile short|long [--seed N]`.

It runs the order saga through the example shop on its own PostgreSQL cluster and RabbitMQ
node (never the machine's shared ones), with real `saga run` replicas and participant
processes, while a seeded schedule kills processes, restarts and kills the servers, breaks
and slows connections through a TCP proxy and duplicates, reorders and drops messages; then
it checks every invariant against the shop's own data and the engine's history and prints a
table. See docs/guarantees.md."""
