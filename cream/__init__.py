"""CREAM: consistency-regularized self-rewarding language models, and the SRLM baseline."""
