from services.normalizer.main import run

run()
