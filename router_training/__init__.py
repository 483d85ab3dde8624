"""Training, profiling and evaluation of coe-router's routers (``python -m router_training``).

Shares only the artifact format with the gateway, never code paths. The trained
strategies arrive with the routing work; today the gateway routes by keyword rules.
"""
