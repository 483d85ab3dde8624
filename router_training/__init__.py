"""Training, profiling and evaluation of coe-router's routers (``python -m router_training``).

Shares only the artifact format (:mod:`coe_router.routing.artifact`) with the gateway,
never code paths: fitting needs scikit-learn, serving needs numpy and the encoder.
"""
