from toolflows.fake_provider import main

main()
