"""The tiered pool: which experts are awake (hot), asleep in CPU RAM (warm) or cold.

* :mod:`.tiers`: the tiers, the per-expert residency record, the driver and coordinator
  protocols;
* :mod:`.scheduler`: who waits for what, which expert wakes next, which one is evicted;
* :mod:`.transitions`: carrying out wakes and sleeps (alone, or under the fleet's lease);
* :mod:`.eviction`: eviction policies, by name;
* :mod:`.drivers`: moving one expert between tiers (vLLM's sleep API, or its process);
* :mod:`.fleet`: one truth for several gateways through the shared tier table.
"""
