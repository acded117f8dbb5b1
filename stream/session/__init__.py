"""A session: options for every stage, the builder that assembles them, the per-turn pipeline,
and the Protocols (seams) each stage implements."""
