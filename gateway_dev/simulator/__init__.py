"""An eHerkenning broker (herkenningsmakelaar) simulator for development, tests and the demo.

It speaks the eHerkenning SAML profile: signed AuthnRequests in (Redirect or
POST), the Artifact binding out, a SOAP ArtifactResolutionService, signed
assertions with EncryptedID identifiers and nested Advice assertions, and
error statuses per scenario. See ``docs/simulator.md``.

Public API::

    settings = load_simulator_settings("config/simulator.example.yaml")
    app = build_simulator_app(settings)         # aiohttp app; app[SIMULATOR] is the control API
    async with running_simulator(settings) as sim:   # free port, base URL bound
        sim.use_scenario("direct")
    run_simulator(settings, host, port)          # blocking, for the CLI
"""

from gateway_dev.simulator.app import build_simulator_app
from gateway_dev.simulator.control import SIMULATOR, IssuedLogin, Simulator
from gateway_dev.simulator.scenarios import Company, Intermediary, Scenario
from gateway_dev.simulator.server import run_simulator, running_simulator, serve_simulator
from gateway_dev.simulator.settings import MtlsSettings, SimulatorSettings, load_simulator_settings

__all__ = [
    "SIMULATOR",
    "Company",
    "Intermediary",
    "IssuedLogin",
    "MtlsSettings",
    "Scenario",
    "Simulator",
    "SimulatorSettings",
    "build_simulator_app",
    "load_simulator_settings",
    "run_simulator",
    "running_simulator",
    "serve_simulator",
]
