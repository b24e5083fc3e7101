-- placeholder until the limiter lands
return 0
