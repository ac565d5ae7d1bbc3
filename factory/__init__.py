"""Model Factory: one models.yaml to BentoML services, a GitLab pipeline, a proxy and Kubernetes."""
