"""EKS Image Prefetch: domain logic and AWS adapters shared by the application's Lambda functions."""
