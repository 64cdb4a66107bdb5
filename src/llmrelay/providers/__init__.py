"""Model backends behind one small interface (:class:`~llmrelay.providers.base.Provider`)."""
