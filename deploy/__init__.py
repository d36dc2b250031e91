"""Deployment assets: dashboards, alert rules, compose and Kubernetes manifests."""
