"""Node-level relays: a node's ranks reduce into mergeable partial accumulators before the aggregator."""
