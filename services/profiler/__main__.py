from services.profiler.main import run

run()
