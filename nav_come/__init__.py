"""nav_come: the world model (autoencoder, denoisers, memory experts, composition) on top of
``nav_come.core``, the infrastructure every layer shares. Importing the package registers the
checkpoint kinds of its networks ("ae", "dit"), so any of them loads by kind."""

from nav_come import autoencoder, dit  # noqa: F401  (register their checkpoint kinds)
