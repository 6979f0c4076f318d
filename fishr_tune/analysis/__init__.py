"""Analysis: every source read into one long table (readers, mlflow_reader), DomainBed's model selection over it
(selection), and what comes out of it: tables (render), best configurations (best_config), plots, inconsistency
scores (inspect) and models logged back to MLflow (mlflow_writer). pipeline holds `fishr-tune analyze`'s decisions."""
