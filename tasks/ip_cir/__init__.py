"""IP-CIR stages: plan_layout, synthesize_proxies, robust_proxy (one stage per module, file = stage name)."""
