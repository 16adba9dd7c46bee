from services.writer.main import run

run()
