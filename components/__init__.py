"""KFP components: one thin wrapper per kind of work (data, sid, teacher, train, evaluate), made
into one component per registered step by `factory.component_for`. `runtime` is what every
component body runs; it never imports kfp."""
