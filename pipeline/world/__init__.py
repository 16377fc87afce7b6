"""The built-in sample shop (:mod:`~pipeline.world.sample`, :mod:`~pipeline.world.vocab`) and
the simulated user (:mod:`~pipeline.world.simulate`) that turns relevance labels into
engagement logs."""
