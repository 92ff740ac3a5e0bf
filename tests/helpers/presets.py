"""Settings the tests give a paper preset (office, industrial, games) to compile or run it."""

# Stage 1 of a paper preset needs general-reasoning data: a file on the model-cache volume, as a cluster has it.
GENERAL_DATA = "stage1.instruction_file=/models/general/sampled_data.arrow"
