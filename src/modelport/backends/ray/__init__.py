"""The Ray backend: replicas as Ray actors on a cluster (``modelport serve --backend ray``).

``backend.RayBackend`` implements ``backends.base.Backend``; ``replica`` supervises one
actor per replica; ``actor.ReplicaActor`` is the actor (one loaded ``Runtime``);
``jobs.RayJobRunner`` runs training jobs in actors (seam 3); ``_ray`` is
the only module that calls Ray. Importing this package does not import Ray (the ``ray``
extra): the backend joins the cluster on its first deploy.
"""
