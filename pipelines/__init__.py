"""The KFP pipeline DAG, local runs and compilation."""
