"""HTTP only: routes, request and response models, auth, limits."""
