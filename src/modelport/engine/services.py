"""The one place where the server's objects are built and wired together.

``build_services`` turns a ``Settings`` into every long-lived object the API needs; the API
layer receives the result and never constructs engines, stores or backends itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.backends.base import Backend
from modelport.backends.jobs import JobRunner, LocalJobRunner
from modelport.backends.local import LocalBackend
from modelport.backends.ray._ray import RayCluster
from modelport.backends.ray.backend import RayBackend
from modelport.backends.ray.jobs import RayJobRunner
from modelport.engine.accounts import AccountService
from modelport.engine.audit import AuditLog
from modelport.engine.billing import BillingService
from modelport.engine.datasets import DatasetService
from modelport.engine.deployments import DeploymentManager
from modelport.engine.inference import InferenceService
from modelport.engine.llm import LLMService
from modelport.engine.metering import Meter
from modelport.engine.models import ModelService
from modelport.engine.pipelines import PipelineService
from modelport.engine.pricing import PriceBook
from modelport.engine.ratelimit import RateLimiter
from modelport.engine.registry import Registry
from modelport.engine.routing import RouteTable
from modelport.engine.run_records import RunRecords
from modelport.engine.traffic import TrafficService
from modelport.engine.traffic_records import TrafficRecords
from modelport.engine.training import TrainingService
from modelport.engine.training_jobs import EventHub, JobScheduler
from modelport.engine.usage import UsageHub
from modelport.observability.metrics import Metrics
from modelport.settings import Settings
from modelport.storage.artifacts import ArtifactStore, LocalArtifactStore
from modelport.storage.db import Database


@dataclass
class Services:
    settings: Settings
    database: Database
    artifacts: ArtifactStore
    registry: Registry
    backend: Backend
    metrics: Metrics
    deployments: DeploymentManager
    inference: InferenceService
    models: ModelService
    usage: UsageHub
    llm: LLMService
    accounts: AccountService
    audit: AuditLog
    limits: RateLimiter
    prices: PriceBook
    meter: Meter
    billing: BillingService
    datasets: DatasetService
    training: TrainingService
    traffic: TrafficService
    pipelines: PipelineService

    def close(self) -> None:
        self.database.dispose()


def build_services(settings: Settings) -> Services:
    """Create (but do not start) the server's services."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.db_url)
    artifacts = LocalArtifactStore(settings.artifacts_root)
    registry = Registry(database, artifacts)
    backend, jobs = _backend(settings)
    metrics = Metrics()
    deployments = DeploymentManager(settings, registry, artifacts, backend, metrics)
    usage = UsageHub(settings.usage_recent_events, metrics.registry)
    routes = RouteTable()  # traffic splits and pipelines: model names served by several
    inference = InferenceService(deployments, usage, routes)
    accounts = AccountService(database)
    # Tenant rpm/tpm come from the accounts' in-memory table (no SQL per request).
    limits = RateLimiter.from_settings(settings, accounts.tenant_limits)
    usage.subscribe(limits.on_usage)  # tokens are charged after the fact
    prices = PriceBook(database)
    meter = Meter(settings, database, prices, tenant_budgets=accounts.tenant_limits)
    if settings.metering:
        usage.subscribe(meter.on_event)  # one usage record per answered request
    models = ModelService(settings, registry, artifacts)
    datasets = DatasetService(database, artifacts)
    return Services(
        settings=settings,
        database=database,
        artifacts=artifacts,
        registry=registry,
        backend=backend,
        metrics=metrics,
        deployments=deployments,
        inference=inference,
        models=models,
        usage=usage,
        llm=LLMService(settings, deployments, inference, deployments.backend, usage, metrics),
        accounts=accounts,
        audit=AuditLog(database),
        limits=limits,
        prices=prices,
        meter=meter,
        billing=BillingService(database, prices, meter),
        datasets=datasets,
        training=_training(settings, database, registry, models, datasets, artifacts, jobs),
        traffic=TrafficService(
            settings, registry, deployments, routes, TrafficRecords(database), metrics
        ),
        pipelines=PipelineService(database, registry, deployments, routes, inference.resolve),
    )


def _backend(settings: Settings) -> tuple[Backend, JobRunner]:
    """Where replicas and training jobs run: processes here, or actors on a Ray cluster
    (one connection for both; Ray itself is imported when it joins the cluster)."""
    if settings.backend == "ray":
        cluster = RayCluster(
            settings.ray_address, settings.ray_namespace, settings.ray_connect_timeout_s
        )
        return RayBackend(settings, cluster), RayJobRunner(cluster)
    return LocalBackend(settings), LocalJobRunner()


def _training(
    settings: Settings,
    database: Database,
    registry: Registry,
    models: ModelService,
    datasets: DatasetService,
    artifacts: ArtifactStore,
    jobs: JobRunner,
) -> TrainingService:
    """The training service: runs in the database, jobs where ``jobs`` starts them."""
    records = RunRecords(database)
    hub = EventHub()
    scheduler = JobScheduler(settings, records, datasets, models, artifacts, jobs, hub)
    return TrainingService(settings, records, datasets, registry, scheduler, hub)
