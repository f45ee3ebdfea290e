"""mpray's MPI backend: every MPI rank a node, RMA object transfer, global scheduling.

Not built yet (the MPI backend issue builds on the single-host engine and actors).
Single-host mpray never imports this package.
"""
